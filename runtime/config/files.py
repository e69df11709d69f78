"""On-disk checks of a config: every sparse_files entry must be a valid table of the right dim
(and, with ``scan_values``, free of NaN and Inf, which a current ``table.json`` answers without
reading the vectors), and tables fused into one (fuse_embedding_table) must not share keys."""

from __future__ import annotations

from pathlib import Path

from ..table.verify import verify_table
from .fusion import key_overlap_issues
from .issues import ERROR, ConfigIssue, json_path
from .model import PsConfig


def file_issues(config: PsConfig, *, scan_values: bool = False) -> list[ConfigIssue]:
    """Verify each table against its model's settings; a current table.json skips the scan.
    ``scan_values``: a vector holding NaN or Inf is an error too."""
    issues: list[ConfigIssue] = []
    key_width = 64 if config.supportlonglong else 32
    for m, model in enumerate(config.models):
        for t in range(model.num_tables):
            dim = (
                model.embedding_vecsize_per_table[t]
                if t < len(model.embedding_vecsize_per_table)
                else None
            )
            path = model.table_path(t)
            report = verify_table(
                path, dim, key_width=key_width, scan_values=scan_values, use_sidecar=True
            )
            for defect in report.defects:
                hint = None
                if defect.code == "dim_mismatch":
                    hint = (
                        "fix embedding_vecsize_per_table or point sparse_files at the right table"
                    )
                elif defect.code == "non_finite":
                    hint = (
                        "convert the table again from finite data (hps convert names the rows), "
                        "or pass --allow-non-finite to serve it as it is"
                    )
                elif defect.code == "not_a_table":
                    hint = (
                        "relative paths resolve against the config file's folder"
                        if not Path(model.sparse_files[t]).is_absolute()
                        else None
                    )
                elif defect.code == "unreadable":
                    hint = "fix or replace the file (a symbolic link loop, or no permission)"
                issues.append(
                    ConfigIssue(
                        ERROR,
                        json_path("models", m, "sparse_files", t),
                        defect.message,
                        f"table_{defect.code}",
                        hint or f"'hps table verify {path}' lists every defect of the table",
                        defect.location,
                    )
                )
    if not issues:  # the key files are valid tables: fused groups can be read
        issues += key_overlap_issues(config)
    return issues
