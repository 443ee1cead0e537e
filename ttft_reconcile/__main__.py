from ttft_reconcile.entry import main

main()
