from mlp_training.main import main

main()
