"""IEEE-754 binary32 arithmetic, shared by the dequant pipeline, the activation quantizer and the
vector unit (docs/fp.md)."""

from .add import FPAdd, fp_add
from .compare import COMPARISON, FPCompare
from .div import FPDiv
from .exp import FPExp, fp_exp
from .format import CANONICAL_NAN16, CANONICAL_NAN32, FLOAT16, FLOAT32, OPERANDS
from .fp16_to_fp32 import FP16ToFP32, fp16_to_fp32
from .fp32_to_fp16 import FP32ToFP16
from .fp32_to_int import FP32ToInt
from .int32_to_fp32 import Int32ToFP32, int32_to_fp32
from .mul import FPMul, fp_mul
from .recip import RECIPROCAL_OPERAND, FPReciprocal, fp_recip


__all__ = ["FPAdd", "FPMul", "FPCompare", "FP16ToFP32", "FP32ToFP16", "Int32ToFP32",
           "fp_add", "fp_mul", "fp16_to_fp32", "int32_to_fp32",
           "FLOAT32", "FLOAT16", "OPERANDS", "COMPARISON", "CANONICAL_NAN32", "CANONICAL_NAN16",
           "FPDiv", "FP32ToInt", "FPExp", "fp_exp", "FPReciprocal", "fp_recip",
           "RECIPROCAL_OPERAND"]
