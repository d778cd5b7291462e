"""Evaluation of control against links: the oracle, the discrete-event simulator, the link check and the
socket load generator. Nothing on the device imports this to run; the CLIs, the load tester and the benches do."""
