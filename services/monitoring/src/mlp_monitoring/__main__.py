from mlp_monitoring.main import main

main()
