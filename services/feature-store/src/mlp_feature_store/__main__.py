"""``python -m mlp_feature_store``."""

from mlp_feature_store.main import main

main()
