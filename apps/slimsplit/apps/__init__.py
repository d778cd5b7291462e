"""Tools that drive the edge and the server together: the demo and the load tester."""
