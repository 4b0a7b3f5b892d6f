"""Judging models that `edgebus.training` fitted: the out-of-fold operating point and calibration, the shape
fusion, the lesion-presence rule, evaluation on labelled sets (DICOM too), the stress benchmark and a site's
check. Reads run and CV folders; TensorFlow only where a float model is scored."""
