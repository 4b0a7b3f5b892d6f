"""The Keras engine: build, compile, fit, predict, save and load models. Used by training AND
export (QAT fine-tuning), so neither has to import the other. TensorFlow loads through
edgebus.compat when a function here is called, never on import."""
