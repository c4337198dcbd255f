"""Running and shipping: run folders and MLflow tracking, the model registry, the promotion gate, Prefect
artifacts and plots, incremental retraining, up-front checks of what a config refers to."""
