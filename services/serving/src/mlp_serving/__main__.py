from mlp_serving.main import main

main()
