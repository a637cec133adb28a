
 wasteledger.example/baotou-pilot.

baotou-eeb Fúµî÷şhi÷&íâŒBÏ
Ùßß<!nˆd;õtÂ,H¼@node1.generator	generator" &«;i¡Óq,ñ=Îï¨EØ~ìÆ11
Ñ¦AyDnode2.transportertransporter" Ò  Î_"åÖ‰ßE~ŠúÊ1+µÀo+,‹o6œ ¡_`>node3.facilityfacility" ˆ6»`P8'U&-à·5‹‘úŒ1ûCí×ã×}"(€ ÒÚç3