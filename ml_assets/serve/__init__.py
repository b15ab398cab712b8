"""`ml-assets serve`: the current model selection behind KServe's V1 inference protocol.

`current` loads a selection the instance recorded (every artifact verified) and swaps it in as
one immutable snapshot; `inputs` turns a request body into the dataset's feature matrix;
`app` is the Starlette application. Above `state/`, below `defs/`: it reads what landed and
never imports the Dagster definitions.
"""
