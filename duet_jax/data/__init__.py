"""Pre-processing and the training data pipeline (no torch; no JAX arrays).

* `conversation`: LLaVA-1.5 templates (`vicuna_v1`, `plain`) and prompt strings.
* `tokenize`: `tokenizer_image_token`, llava-hf image-block expansion, LLaVA's
  `preprocess_v1` / `preprocess_plain` label masking.
* `images`: load, pad to square with the CLIP mean colour, CLIP processor (PIL).
* `llava_json`: the LLaVA instruction JSON format, validation, sample encoding.
* `loader`: deterministic sharded static-shape batches with resumable state.
"""
from duet_jax.data.conversation import (IMAGE_TOKEN, VICUNA_V1_SYSTEM, build_eval_prompt,
                                        build_training_conversation, get_template)
from duet_jax.data.images import (background_color, expand_to_square, load_image,
                                  load_image_processor, preprocess_image)
from duet_jax.data.llava_json import RecordError, SampleEncoder, load_records, validate_record
from duet_jax.data.loader import (LoaderConfig, TrainBatchIterator, default_length_buckets,
                                  make_train_iterator)
from duet_jax.data.tokenize import (IGNORE_INDEX, IMAGE_PLACEHOLDER, TrainingExample,
                                    encode_training, expand_image_placeholders, preprocess_plain,
                                    preprocess_v1, right_pad, tokenize_prompt,
                                    tokenizer_image_token)

__all__ = [
    "IMAGE_TOKEN", "VICUNA_V1_SYSTEM", "build_eval_prompt", "build_training_conversation",
    "get_template", "background_color", "expand_to_square", "load_image", "load_image_processor",
    "preprocess_image", "RecordError", "SampleEncoder", "load_records", "validate_record",
    "LoaderConfig", "TrainBatchIterator", "default_length_buckets", "make_train_iterator",
    "IGNORE_INDEX", "IMAGE_PLACEHOLDER", "TrainingExample", "encode_training",
    "expand_image_placeholders", "preprocess_plain", "preprocess_v1", "right_pad",
    "tokenize_prompt", "tokenizer_image_token",
]
