"""Caption evaluation (metrics in ``captions``, the HTML report in ``report``)."""
