from cdc_invoice.cli import main

main()
