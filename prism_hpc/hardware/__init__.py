"""What the hardware can do, measured or looked up, before a run relies on it.

`capability` says which precisions a device runs natively and picks one (`choose_precision`,
a pure rule that stages and `plan` share); `probe` times them and checks channels_last,
torch.compile and torch.distributed; `tuning` resolves the `auto` speed options (`recover.pack`,
`students.channels_last`) from what `layout_probe` and `bench recover --calibrate` measured on
the device; `doctor` turns all of it, plus a config's data, weights and file systems, into one
report (`prism-hpc doctor`). Nothing here imports torch at module level, so importing the
package is cheap (the CLI and `plan` import it).
"""
