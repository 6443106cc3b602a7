"""Many targets at once: which ones (members), running each as its own qpatch child
(runner), and what the operator sees meanwhile and after (view)."""
