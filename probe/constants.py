"""Whisper's fixed numbers, defined once: every model size shares them.

Audio is 16 kHz mono; the log-Mel has a 25 ms analysis window every 10 ms (100 frames per
second); the conv stem halves that to 50 encoder frames per second (20 ms each); the model reads
30 s windows — 3000 log-Mel frames, 1500 encoder frames — and its timestamp tokens
``<|0.00|>`` … ``<|30.00|>`` step by 0.02 s (one encoder frame).
"""

SAMPLE_RATE = 16000  # samples per second
N_FFT = 400  # samples in one log-Mel analysis window (25 ms)
HOP_LENGTH = 160  # samples between log-Mel frames (10 ms)
MEL_FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100; seek counts these
ENCODER_FRAMES_PER_SECOND = MEL_FRAMES_PER_SECOND // 2  # 50, after the stride-2 conv
WINDOW_SECONDS = 30  # one window of the model
MEL_FRAMES_PER_WINDOW = WINDOW_SECONDS * MEL_FRAMES_PER_SECOND  # 3000
ENCODER_FRAMES_PER_WINDOW = WINDOW_SECONDS * ENCODER_FRAMES_PER_SECOND  # 1500
TIMESTAMP_SECONDS = 1 / ENCODER_FRAMES_PER_SECOND  # 0.02 s between timestamp tokens
N_TIMESTAMP_TOKENS = WINDOW_SECONDS * ENCODER_FRAMES_PER_SECOND + 1  # 1501: <|0.00|> … <|30.00|>

# How figures are saved (probe.figures.legible explains the sizes; kept here so the export can name
# them without loading matplotlib).
SCREEN_DPI = 110  # the dashboard's PNGs and the html export's inline figures
PRINT_DPI = 150  # the export's PNG/SVG/PDF files: figures are 7–16 in wide, so a page's text width
# (~6.5 in) prints them at 160–370 dpi, and the widest is 2430 px, more than a projector shows
