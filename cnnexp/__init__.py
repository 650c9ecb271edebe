"""cnnexp: declarative CNN experiments (Hydra configs, Lightning training, MLflow records).

`cnnexp.run`, `cnnexp.compose`, `cnnexp.inspect`, `cnnexp.Result`, `cnnexp.CnnexpError` come
from cnnexp/api.py on first use, so `import cnnexp` (and `cnnexp --help`) loads no torch.
"""

API = ("run", "compose", "inspect", "Result", "CnnexpError")


def __getattr__(name: str):
    if name not in API:
        raise AttributeError(f"module 'cnnexp' has no attribute {name!r}")
    from cnnexp import api

    return getattr(api, name)
