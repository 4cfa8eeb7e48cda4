"""Loading policies, reference models, value heads and reward models."""

import transformers

# Library-level settings: no per-load reports or progress bars on the console.
transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
