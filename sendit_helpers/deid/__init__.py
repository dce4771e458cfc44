"""The de-identification machinery under the stages: recipes, writer, screening, gate, pictures.

The recipe: its model (:mod:`recipemodel`), field expressions (:mod:`recipefields`),
parser (:mod:`recipeparser`), engine (:mod:`recipes`) and compiled plan
(:mod:`recipeplan`), ``%filter`` screening (:mod:`recipefilters`), date shifts
(:mod:`dateshift`), ``func:clean_text`` (:mod:`cleantext`), with :mod:`iodtypes`,
:mod:`descriptors` and :mod:`structured`; the per-study element cache and the raw
header writer (:mod:`elementcache`, :mod:`dicomwrite`), the cleaned table's rows
(:mod:`cleaned`), ``%filter`` screening and OCR (:mod:`screening`, :mod:`ocr`), pixel
scrubbing and the site's own filter rules (:mod:`scrub`, :mod:`siterules`), renderings
(:mod:`plots`) and the leak gate (:mod:`leakgate`, with :mod:`gatescan`, :mod:`gatepolicy`,
:mod:`gatewritten`, :mod:`gaterecord`).  ``deid`` imports only ``core``
(``tests/test_layers.py`` enforces it).
"""
