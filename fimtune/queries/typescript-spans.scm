; Middles for TypeScript; TSX uses this file too (every node named here exists in both grammars).
; Each capture name is a span kind (see fimtune/corpus/spans.py); captures whose name starts with "_" are helpers.
; Every syntax kind exists in TypeScript.
; "statements" (2-4 consecutive sibling @statement nodes), "empty" (also after a @statement) and the line kinds
; are made by spans.py; kinds not captured here simply have no candidates in this language.

; statement: one statement or declaration.
[
  (expression_statement) (return_statement) (throw_statement) (break_statement) (continue_statement)
  (debugger_statement) (lexical_declaration) (variable_declaration) (import_statement) (export_statement)
  (if_statement) (for_statement) (for_in_statement) (while_statement) (do_statement) (try_statement)
  (switch_statement) (labeled_statement) (function_declaration) (generator_function_declaration)
  (class_declaration) (abstract_class_declaration) (interface_declaration) (type_alias_declaration)
  (enum_declaration)
] @statement

; block: what is between the braces of a function, loop, if, class, interface or enum body
; (spans.py trims it to whole lines).
(statement_block) @block
(class_body) @block
(interface_body) @block
(enum_body) @block
(switch_body) @block

; call_args: inside the parentheses of a call or a `new`.
(call_expression arguments: (arguments) @call_args)
(new_expression arguments: (arguments) @call_args)

; condition: the test of if / while / do-while, without its parentheses; the test of a for loop.
(if_statement condition: (parenthesized_expression) @condition)
(while_statement condition: (parenthesized_expression) @condition)
(do_statement condition: (parenthesized_expression) @condition)
(for_statement condition: [(expression) (sequence_expression)] @condition)

; assignment_rhs: an initialiser, the right-hand side of an assignment, a class field's value.
(variable_declarator value: (_) @assignment_rhs)
(assignment_expression right: (_) @assignment_rhs)
(augmented_assignment_expression right: (_) @assignment_rhs)
(public_field_definition value: (_) @assignment_rhs)
