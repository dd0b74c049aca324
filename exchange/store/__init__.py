"""The node's SQLite database: every table, its migration and every SQL statement."""
