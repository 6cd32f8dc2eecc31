"""The invoice domain: money, tax math, mapping, validation, splitting and reversal. Pure, no I/O."""
