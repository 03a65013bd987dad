"""The Datasets tab: stored datasets, importing one, and the analysis and records of one."""

from mlxlora.tui.screens.datasets.tab import DatasetsTab

__all__ = ["DatasetsTab"]
