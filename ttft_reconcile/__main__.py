from ttft_reconcile.cli import main

main()
