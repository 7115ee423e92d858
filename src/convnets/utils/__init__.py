"""Small helpers with no knowledge of training: atomic writes, versions, tables, figures, child processes."""
