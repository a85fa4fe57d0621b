"""Engine state → template data, one module per panel: what each panel of the player, the compare
view and the landing page shows. Every list is capped, so a 1 GiB slot gives a page of the same
order of size as the worked example."""
