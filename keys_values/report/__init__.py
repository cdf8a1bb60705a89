"""The report of a tasks folder, a reader of files only (no model): collect (every experiment's record, its
evaluations, seed and role) -> compare (keys against values, like with like only, pooled over seeds) -> render
(tables: summary.md; figures: summary.png)."""
