"""The parts of `python -m pslab.launch` (pslab/launch.py), one job each:

    mpi        which mpirun, and its command line and environment for a run
    checks     the whole run checked before mpirun starts (rank counts, files, flags)
    procs      the job's processes: start mpirun, find a run's ranks, end them all
    signals    SIGINT / SIGTERM / SIGHUP: end the job, summary "interrupted", exit 128+signal
    watchdog   in every rank: end the job when the launcher is gone or the deadline passed
    progress   the progress line, read from the ranks' own records; sweep counts and ETA
    summary    summary.json from the records the ranks left
    hostrun    --hosts K: the launcher's one entry to emulated hosts (check, set up, poll, tear down)
    hosts      emulated hosts: placement, the seq hostfile, the rsh agent, hosts in summary.json
    hostfaults kill_host / hang_host: a host's ranks and daemon ended at one instant
    netns      --hosts-netns: a network namespace per host on a bridge the run makes
"""
