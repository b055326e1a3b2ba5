"""`featviz export FORMAT GALLERY OUT`: a finished gallery in a format the field's tools read
(Neuronpedia's import layout, OpenAI neuron-explainer NeuronRecords, dashboard JSON)."""
from __future__ import annotations


def add_export_parser(sub, common):
    from featviz.site.exports import FORMATS
    e = sub.add_parser("export", help="a gallery as Neuronpedia import files, OpenAI "
                                      "NeuronRecords or feature-dashboard JSON")
    e.add_argument("format", choices=FORMATS)
    e.add_argument("gallery", help="a folder written by featviz gallery")
    e.add_argument("out", help="a new (or empty) folder to write")
    e.add_argument("--model-id", dest="model_id",
                   help="the model's id in the export (default: from the gallery's model name)")
    e.add_argument("--set", dest="set_name", default="",
                   help="neuronpedia: a suffix for the source sets ({layer}-{kind}-SET)")
    e.add_argument("--creator", default="featviz", help="neuronpedia: the creator's name")
    e.add_argument("--batch-size", dest="batch_size", type=int, default=2048,
                   help="neuronpedia: features per batch-N.jsonl.gz file")
    e.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from featviz.site.exports import export
    s = export(args.format, args.gallery, args.out, model_id=args.model_id,
               set_name=args.set_name, creator=args.creator, batch_size=args.batch_size)
    print(s.line())
    return 0
