"""What turns request tensors into graph inputs: images decoded and normalized, text
tokenized, a file's bytes windowed. Pure (numpy, Pillow), no Kafka and no onnxruntime.

Each function takes one request's value and a part of the model's ServingSpec (data, never
code), and either returns an array in the graph's layout or raises InvalidEventError with
the reason a dead letter (or a gateway's 4xx) carries: ``invalid-image``,
``image-too-large``, ``invalid-text``, ``too-long``.
"""
