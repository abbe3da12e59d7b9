"""Reproduction machinery: experiments (one module per table or figure), presets, the runner
(cells written atomically, resumable), the store (the run folder on disk), the report and its
figures. The library it composes is the rest of :mod:`malleability`."""
