"""The invoice domain: money, tax math, mapping, validation, splitting, reversal. Pure, no I/O."""
