"""`python -m cnnexp task=report`: runs read back from MLflow, compared in a table and plots."""

from cnnexp.report.write import report

__all__ = ["report"]
