-- kefu 0002: transcript search. FTS5's trigram tokenizer indexes every 3-character
-- sequence, so substring search works for Chinese (no word boundaries) and English
-- alike, case-insensitively. rowid = chat_messages.id. Terms shorter than three
-- characters fall back to LIKE over this table.
CREATE VIRTUAL TABLE chat_fts USING fts5(body, tokenize = 'trigram');
