from mlp_registry.main import main

main()
