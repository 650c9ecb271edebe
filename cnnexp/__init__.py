"""cnnexp: declarative CNN experiments (Hydra configs, Lightning training, MLflow records)."""
