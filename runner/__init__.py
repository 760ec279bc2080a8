"""The runner: claims runs from BD_RUNS, executes their actions, streams logs,
progress and state to BD_EVENTS, answers cancels, heartbeats into bd_runners."""
