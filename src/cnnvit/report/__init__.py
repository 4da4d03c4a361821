"""The report's content: tables as formatted rows, and what differs from the paper."""
