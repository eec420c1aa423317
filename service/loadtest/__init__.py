"""`sdedit loadtest`: a load client for the service (closed and open loop, SLO checks, plots).

workload.py: what is sent; runner.py: how it is sent and timed; report.py: the numbers and
the JSON report; triton.py: Triton's counters over the run; plots.py: PNG plots; cli.py:
the command.
"""
