"""The invoice files (XML, PDF, OFD) in the company's own archive: fetched, checked, kept, verified.

check.py    what a file must be: a PDF that opens, an OFD container, an XML that says what
            we recorded (the bureau's element names)
fetcher.py  the daemon's archiver loop: cdc_invoice.invoice_file_fetch -> invoice_file
keep.py     where the bytes go: the database (default) or daemon.archive_dir
audit.py    `cdc-invoice archive verify / export / retry` (sync, for the CLI)
"""
