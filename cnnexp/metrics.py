"""The names of the metrics every run logs per stage (one place: the classifier logs them, the
fit diagnosis, the dashboard and the report read them)."""

METRICS = ("loss", "acc")  # logged per stage: train_loss, val_acc, test_acc, ...
CURVES = ("train_loss", "val_loss", "train_acc", "val_acc")  # one point per epoch
