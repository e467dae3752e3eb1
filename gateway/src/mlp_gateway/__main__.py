from mlp_gateway.main import main

main()
