"""What the engine's output means, in plain language: a sentence per trace event (`events`), the
kernel file each function lives in (`kernel_files`), and what each invariant and spte bit means
(`meanings`)."""
