"""FPGA backends: the InTAR cost model and scheduler, a fixed-point emulator and an XRT driver."""
