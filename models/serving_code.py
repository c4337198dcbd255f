"""The registered pyfunc's model code (MLflow "models from code"): loading a registered version runs
this file, which names the class to build, instead of unpickling a saved object.

`tasks.ops.registry.log_recommender` logs this file as `python_model`; MLflow copies it next to the
MLmodel file and puts the logged code paths (models/, conf/) on sys.path before running it. The
class then loads its artifacts in `load_context` (the model file with torch.load(weights_only=True)).
"""
import mlflow.models

from models.serving import TopKRecommender

mlflow.models.set_model(TopKRecommender())
