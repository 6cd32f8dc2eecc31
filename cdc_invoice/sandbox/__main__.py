"""``python -m cdc_invoice.sandbox`` runs the same command as ``cdc-invoice sandbox``."""

from cdc_invoice.sandbox.cli import sandbox

if __name__ == "__main__":
    sandbox(prog_name="cdc-invoice sandbox")
