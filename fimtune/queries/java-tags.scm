; Definitions and imports of Java, for the cross-file context index (fimtune/context.py).
; Captures: @definition.<kind> (the whole definition), @name, @body (elided in the stub), @doc (docstring kept),
; @import (imported name), @import.wildcard (present for `import a.b.*`). Javadoc is found without a capture.
; When several patterns capture the same @name node they are merged: the largest node, the first pattern's kind.

(class_declaration name: (identifier) @name body: (_) @body) @definition.class
(interface_declaration name: (identifier) @name body: (_) @body) @definition.interface
(enum_declaration name: (identifier) @name body: (_) @body) @definition.class
(record_declaration name: (identifier) @name body: (_) @body) @definition.class
(annotation_type_declaration name: (identifier) @name body: (_) @body) @definition.interface

(method_declaration name: (identifier) @name body: (_)? @body) @definition.method
(constructor_declaration name: (identifier) @name body: (_) @body) @definition.method

(import_declaration (scoped_identifier) @import .)
(import_declaration (identifier) @import .)
(import_declaration (scoped_identifier) @import (asterisk) @import.wildcard)
