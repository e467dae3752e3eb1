from mlp_experiments.main import main

main()
