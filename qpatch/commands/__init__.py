"""One module per command: each opens a session (qpatch.session), runs its engine
sequence and returns the exit code; the CLI turns errors into messages and statuses."""
