"""Network definitions written in this project (the ones MONAI lacks), under unique module names."""
